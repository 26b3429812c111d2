"""The trained edit methods: stages `textual_inversion` and `imagic` (docs/editing.md).

Their config sections (`edit.textual_inversion.*`, `edit.imagic.*`) live in `editing/config.py`
with the rest of `edit.*`; these modules import `editing`, never the reverse.

- `training`: loading the Stable Diffusion parts, precision, latents, the denoising loss.
- `textual_inversion`: learn a new token's embedding from reference images (resumable).
- `imagic`: Imagic (arXiv 2210.09276) per image for every alpha, per-image state cached.

Nothing is imported here: the `textual_inversion` stage loads its module without `imagic`, and
`dvc.yaml` lists exactly the files each stage runs. The edit stages do not run this package: what
they need of the learned token is `editing.embedding`.
"""
