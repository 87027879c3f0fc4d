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
