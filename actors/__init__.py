"""The engine below the shell: the job model, its registry, instance operations, and the
actors of one daemon (consumer, executor, completer, maintenance, scheduler, stopper,
heartbeat) under one-for-one supervision."""
