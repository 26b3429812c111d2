"""The trained edit methods: stages `textual_inversion` and `imagic` (docs/editing.md).

- `config`: the `edit.textual_inversion.*` and `edit.imagic.*` sections (no torch).
- `training`: loading the Stable Diffusion parts, precision, latents, the denoising loss.
- `textual_inversion`: learn a new token's embedding from reference images (resumable).
- `imagic`: Imagic (arXiv 2210.09276) per image for every alpha, per-image state cached.

Nothing is imported here: the edit stages load `textual_inversion` (recipes may use its token)
without loading `imagic`, and `dvc.yaml` lists exactly the files each stage runs.
"""
