"""The loss curve of a training log as a PNG (every loss term against the optimizer step)."""

from __future__ import annotations

import io

import pyarrow as pa

NOT_TERMS = {"step", "epoch", "lr", "samples_per_s", "seconds"}


def loss_curve_png(log: pa.Table, title: str = "training loss") -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = log.column("step").to_pylist() if log.num_rows else []
    for name in log.column_names:
        if name not in NOT_TERMS:
            ax.plot(steps, log.column(name).to_pylist(), label=name, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if len(log.column_names) > len(NOT_TERMS):
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
