import pytest

from daemon.wiring.config import VARIABLES, ConfigError, load


def test_defaults() -> None:
    cfg = load({})
    assert cfg.partitions == 4 and cfg.channel == "postgres"
    # unset: adapted (actors/adaptive.py), 4 partitions x 256 async workers, claims of up to 500
    assert cfg.adaptive_concurrency and cfg.adaptive_claim
    assert (cfg.partition_concurrency, cfg.claim_batch) == (256, 500)
    assert cfg.heartbeat_seconds == cfg.lease_seconds / 3
    assert cfg.pool_size == cfg.partitions + 4
    assert cfg.database_url == "" and cfg.home == "./.chunkd"


@pytest.mark.parametrize("name,value,fragment", [
    ("CHUNKD_PARTITIONS", "abc", "integer from 1"),
    ("CHUNKD_PARTITIONS", "0", "integer from 1"),
    ("CHUNKD_LEASE_SECONDS", "-3", "number from"),
    ("CHUNKD_CHANNEL", "carrier-pigeon", "one of postgres"),
    ("CHUNKD_DATABASE_URL", "mysql://x", "postgresql://"),
    ("CHUNKD_JOB_CONCURRENCY", "a=0", "job=N"),
    ("CHUNKD_JOB_CONCURRENCY", "justaname", "job=N"),
    ("CHUNKD_JOBS", "not a module", "module names"),
    ("CHUNKD_LOG_LEVEL", "loud", "one of debug"),
])
def test_bad_values_name_the_variable(name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load({name: value})
    msg = str(e.value)
    assert name in msg and repr(value) in msg and fragment in msg
    assert "\n" not in msg


def test_heartbeat_must_be_shorter_than_lease() -> None:
    with pytest.raises(ConfigError, match="CHUNKD_HEARTBEAT_SECONDS"):
        load({"CHUNKD_LEASE_SECONDS": "5", "CHUNKD_HEARTBEAT_SECONDS": "5"})


def test_job_caps_parse() -> None:
    assert load({"CHUNKD_JOB_CONCURRENCY": "acme.export=4, other=2"}).job_concurrency == {"acme.export": 4, "other": 2}


def test_every_variable_is_prefixed_and_unique() -> None:
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names))
    assert all(n.startswith("CHUNKD_") for n in names)


def test_emit_caps_parse_and_must_fit_one_chunk() -> None:
    cfg = load({})
    assert cfg.max_chunks_per_run == 1_000_000 and cfg.max_emit_bytes_per_run == 256 << 20
    steps = load({"CHUNKD_MAX_CHUNKS_PER_RUN": "5000", "CHUNKD_MAX_EMIT_BYTES_PER_RUN": "1GiB"}).actor_settings().steps
    assert steps.max_chunks_per_run == 5000 and steps.max_emit_bytes_per_run == 1 << 30
    with pytest.raises(ConfigError, match="CHUNKD_MAX_EMIT_BYTES_PER_RUN.*at least CHUNKD_MAX_CHUNK_BYTES"):
        load({"CHUNKD_MAX_EMIT_BYTES_PER_RUN": "1MiB"})
    with pytest.raises(ConfigError, match="CHUNKD_MAX_CHUNKS_PER_RUN"):
        load({"CHUNKD_MAX_CHUNKS_PER_RUN": "0"})
