"""Thin stage entry points: one module per DVC stage of `dvc.yaml`.

Each module reads its inputs, calls the pipeline modules and writes its outputs atomically. A
stage module imports only what its stage runs, and `dvc.yaml` lists exactly those files as the
stage's code `deps:`, so editing one stage's code makes `dvc status` report that stage alone
(`tests/test_pipeline_e2e.py` checks both). Nothing is imported here for the same reason.
"""
