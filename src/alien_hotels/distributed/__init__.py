"""Running `caption` and `edit@<recipe>` on a Ray cluster (`caption.executor=ray`,
`edit.executor=ray`).

The DVC stage process is the driver and keeps owning every output: it reads the manifest, skips
what its checkpoint already has, ships the work (image bytes included: no shared filesystem) to
a pool of Ray actors that load the models once, takes results as they complete and writes them
through the same code as the local executor, so the outputs are identical.

- `config`: the `ray.*` section (`RayConfig`; no ray import).
- `pool`: connecting to the cluster, the actor pool (startup checks, lost workers, progress).
- `caption`, `edit`: the two stages' actors and driver loops.
"""
