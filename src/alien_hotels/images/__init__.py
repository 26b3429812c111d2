"""Stage `images`: put every sampled image under `data/images/`, or record why not.

- `config`: the `images.*` section.
- `fetch`: the downloader (address guard, retries, deadlines, limits); only this stage runs it.
- `prepare`: the checks on every image and the dataset's resizing.
- `collect`: the stage loop (`collect_images`): cached, local tree, download; the manifest.

The manifest it writes is defined in `alien_hotels.tables`, which its readers import instead of
this package. docs/images.md; design and measurements: docs/design/images.md.

Nothing is imported here: `config.py` imports `images.config` to validate params.yaml, and the
other stages must not run (nor depend on) the download code.
"""
