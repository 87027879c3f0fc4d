"""The chunkd process: the CLI (`cli/`), configuration and the node that starts the actors
(`wiring/`), the HTTP API (`http/`) and the built-in jobs with their registry (`jobs/`). The
job model lives in `actors/` and its public API in `chunkd`; `daemon.sdk` is only a
deprecated alias of `chunkd`."""
