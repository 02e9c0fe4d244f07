"""joint_fusion (mvft-ji.txt §3.4): score = ŝ(composed query → image) + λ·s̃(MLLM target text → image), both
token-level (eqs. 11-12), ranked exactly under the benchmark's rules into the RANKINGS table.

λ is this stage's parameter and nothing upstream reads it, so a λ change recomputes this stage and `evaluate`
only: the token features (`composed`, `target_text`, `images`) are served from the store. Eq. 19 is missing from
the paper's text; the weighted sum with λ = 1 is our reading (retrieval/joint.py).
"""

from __future__ import annotations

from cirflow.schemas.tables import RANKINGS
from cirflow.tasks.mvft.retrieve_tokens import RetrieveTokens, RetrieveTokensParams, rank
from cirflow.tasks.stage import Context, Stage


class JointFusionParams(RetrieveTokensParams):
    mode: str = "joint"
    lam: float = 1.0


class JointFusion(Stage):
    name, version = "joint_fusion", "1"
    Params = JointFusionParams
    inputs = ("bench", "images", "composed", "target_text")
    outputs = {"data": RANKINGS}

    def produce(self, ctx: Context) -> None:
        rank(ctx, "joint", ctx.params.lam)

    stats, timings = RetrieveTokens.stats, RetrieveTokens.timings


def run(store, bench, images, composed, target_text, *, lam: float = 1.0, k: int = 50,
        circo_exclude_reference: bool = False):
    from cirflow.tasks.stage import execute

    benchmark = bench.manifest.params["benchmark"]
    params = JointFusionParams(benchmark=benchmark, k=k, lam=lam,
                               circo_exclude_reference=circo_exclude_reference if benchmark == "circo" else None)
    return execute(JointFusion, store, {"bench": bench, "images": images, "composed": composed,
                                        "target_text": target_text}, params)
