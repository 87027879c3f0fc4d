from benchmarks.cli import report_table


def test_bench_report_is_a_table_with_the_plot_path() -> None:
    report = {"workload": "e2e", "completed": 2000, "chunks": 2000, "seconds": 1.5, "chunks_per_second": 1500.4,
              "chunks_per_second_overall": 1333.3, "latency_ms": {"p50": 3.1, "p95": 9.0, "p99": 12.5},
              "statements_per_chunk": 0.4, "transactions_per_chunk": 0.1,
              "cpu_seconds_per_1000_chunks": {"daemon": 0.2, "postgres": None}, "chunk_table_bytes": 2_500_000,
              "settings": {"synchronous_commit": "on"},
              "peers": {"procrastinate": {"version": "3.0", "jobs_per_second": 900.0,
                                          "enqueue_plus_drain_per_second": 450.0, "jobs": 1000, "settings": "x",
                                          "ratio": 1.7}, "pgqueuer": {"error": "not installed"}}}
    out = report_table(report, "out/plot.png").splitlines()
    assert out[0].split() == ["METRIC", "VALUE"]
    assert any(ln.startswith("chunks/s sustained") and ln.split()[-1] == "1,500" for ln in out)
    assert any(ln.startswith("claim-to-complete p50 / p95 / p99 ms") and ln.endswith("3.1 / 9.0 / 12.5") for ln in out)
    peer_header = next(i for i, ln in enumerate(out) if ln.startswith("PEER"))
    assert out[peer_header + 1].split()[:3] == ["procrastinate", "3.0", "900"] and "1.7x" in out[peer_header + 1]
    assert "not installed" in out[peer_header + 2]
    assert out[-1].startswith("plot: /") and out[-1].endswith("out/plot.png")


def test_bench_report_ends_with_the_settings_in_effect_beside_the_product_defaults() -> None:
    from benchmarks.settings import settings_report
    used = settings_report({"CHUNKD_CLAIM_BATCH": "64"}, {"CHUNKD_CLAIM_BATCH": "64"})
    assert used["overrides"] == {"CHUNKD_CLAIM_BATCH": "64"}
    assert used["effective"]["claim_batch"] == 64 and used["effective"]["adaptive_claim"] == 0
    assert used["product_defaults"]["claim_batch"] == 500 and used["product_defaults"]["adaptive_claim"] == 1
    report = {"workload": "drain", "completed": 10, "chunks": 10, "seconds": 1.0, "chunks_per_second": 10.0,
              "chunks_per_second_overall": 10.0, "latency_ms": {"p50": 1, "p95": 2, "p99": 3},
              "statements_per_chunk": 0.1, "transactions_per_chunk": 0.1,
              "cpu_seconds_per_1000_chunks": {"daemon": 0.1, "postgres": 0.1}, "chunk_table_bytes": 1,
              "settings": {"synchronous_commit": "on", **used}}
    out = report_table(report, None).splitlines()
    row = next(ln for ln in out if ln.strip().startswith("claim_batch"))
    assert row.split()[1:] == ["64", "|", "500", "(adapted)"], row
    row = next(ln for ln in out if ln.strip().startswith("partition_concurrency"))
    assert row.split()[1:] == ["256", "(adapted)", "|", "256", "(adapted)"], row


def test_soak_report_is_one_row_per_sample() -> None:
    from benchmarks.cli import soak_table
    sample = {"t": 30.0, "submits": 450, "submit_p50_ms": 8.1, "submit_p99_ms": 30.2, "chunk_p99_ms": 41.0,
              "lookup_pages": 96, "rss_mb": 55.2, "fds": 23, "pg_connections": 11, "notify_queue": 0.0,
              "instances": 1800,
              "tables": {"chunkd_chunk": {"live": 360_000, "dead": 1000, "table_bytes": 2**27, "index_bytes": 2**25,
                                          "autovacuums": 3}},
              "indexes": {}}
    report = {"minutes": 7.0, "rate": 15.0, "chunks_per_job": 200, "retention": "2m", "submitted": 900,
              "http": {"refused_429": 0, "errors": 0}, "samples": [sample, {**sample, "t": 60.0}]}
    out = soak_table(report).splitlines()
    assert out[0].startswith("soak: 7.0 min, 15.0 submits/s x 200 chunks") and "CHUNKD_RETENTION=2m" in out[0]
    assert out[1].split()[:2] == ["T", "S"] and len(out) == 4
    assert out[2].split()[:5] == ["30", "450", "8.1", "/", "30.2"]
    assert "360000/1000" in out[2] and "128.0+32.0" in out[2] and "None/None" in out[2]
