"""Attention heatmaps with the subword tokens on the axes, as matplotlib figures for TensorBoard."""

from __future__ import annotations

from torch import Tensor


def attention_figure(panels: list[Tensor], src_tokens: list[str], tgt_tokens: list[str], title: str = "",
                     panel_titles: list[str] | None = None):
    """One (target x source) attention matrix per panel, side by side; panels are layers unless titled."""
    # Imported here, not at the top: matplotlib is a large share of start-up, which commands that draw no heatmap skip.
    import matplotlib

    matplotlib.use("Agg")  # no display: figures are only rendered to images
    import matplotlib.pyplot as plt

    width = max(3.0, 0.3 * len(src_tokens) + 1.5)
    height = max(2.5, 0.3 * len(tgt_tokens) + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
    for number, (ax, matrix) in enumerate(zip(axes[0], panels)):
        ax.imshow(matrix.float().numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=8)
        ax.set_yticks(range(len(tgt_tokens)), tgt_tokens, fontsize=8)
        ax.set_title(panel_titles[number] if panel_titles else f"layer {number}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
