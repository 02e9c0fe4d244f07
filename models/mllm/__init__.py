"""MLLM backends behind one protocol: `load_mllm(cfg)` gives an object with generate/describe/close.

Backends: "http" (OpenAI-compatible server such as `vllm serve`; cirflow.models.mllm.http) and
"transformers" (in process; cirflow.models.mllm.transformers_backend).
"""

from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import MLLM, ChatRequest, ChatResult, parse_json_output

__all__ = ["MLLM", "ChatRequest", "ChatResult", "load_mllm", "parse_json_output"]
