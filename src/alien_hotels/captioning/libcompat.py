"""Version guard for the private APIs the captioning code relies on.

`BatchInterrogator` and `FastChain` reuse clip-interrogator's private helpers
(`_prompt_at_max_len`, `_merge_tables`, `_truncate_to_fit`, `Interrogator._prepare_clip` /
`_prepare_caption`) and reimplement open_clip's text-tower internals (`ResidualAttentionBlock`,
`nn.MultiheadAttention` weights, `attn_mask`, `text_pool_type`). Their equivalence with the
library is tested on the versions below only; on any other version the stage stops with a clear
message rather than risk silently different captions.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from alien_hotels.common import StageError

# Distribution name -> versions tests/test_fastchain.py and tests/test_captioning.py passed on.
TESTED_VERSIONS = {
    "clip-interrogator": ("0.6.0",),
    "open-clip-torch": ("3.3.0",),
}
PRIVATE_APIS = (
    "clip_interrogator: _prompt_at_max_len, _merge_tables, _truncate_to_fit, "
    "Interrogator._prepare_clip/_prepare_caption; open_clip: ResidualAttentionBlock internals "
    "(attn in_proj/out_proj, ln_1/ln_2, mlp, ls_1/ls_2), attn_mask, text_pool_type"
)


def installed_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def check_private_apis() -> None:
    """Raise `StageError` unless every library whose private API we use is a tested version."""
    for distribution, tested in TESTED_VERSIONS.items():
        found = installed_version(distribution)
        if found not in tested:
            raise StageError(
                f"{distribution} {found or '(not installed)'} is not a version alien-hotels was "
                f"tested with ({', '.join(tested)}). The captioning code uses its private APIs "
                f"({PRIVATE_APIS}), which may have changed: install "
                f"{distribution}=={tested[-1]} (as pinned in pyproject.toml), or run "
                "tests/test_fastchain.py and tests/test_captioning.py with the new version and "
                "add it to TESTED_VERSIONS in alien_hotels/captioning/libcompat.py."
            )
