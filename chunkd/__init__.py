"""chunkd's public API: what a job module imports.

    from chunkd import Context, Job, Sink

    job = Job("acme.export", params=ExportParams)

    @job.first_step(emits=IdRange)
    async def plan(params: ExportParams, ctx: Context, sink: Sink[IdRange]) -> None: ...

Everything else in the tree (actors, storage, daemon, ...) is the engine's and may change
between releases; `chunkd.testing` runs a job in memory for unit tests.
"""
from actors.job import (
                        ChunkTooLarge,
                        Context,
                        EmitLimitExceeded,
                        Job,
                        JobDefinitionError,
                        LocalTask,
                        ParameterError,
                        PermanentError,
                        Schedule,
                        Sink,
)

__all__ = ["ChunkTooLarge", "Context", "EmitLimitExceeded", "Job", "JobDefinitionError", "LocalTask", "ParameterError", "PermanentError",
           "Schedule", "Sink"]
