"""The chunkd process: config, CLI, job SDK and registry, wiring."""
