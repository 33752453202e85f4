"""The local stack: the pipeline's real servers as native processes, for tests, CI and the demo."""
