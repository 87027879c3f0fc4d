from daemon.http.throughput import bucket_seconds


def test_buckets_are_round_and_about_sixty_per_chart() -> None:
    assert bucket_seconds(0) == 1 and bucket_seconds(-5) == 1 and bucket_seconds(59) == 1
    assert bucket_seconds(61) == 2 and bucket_seconds(600) == 10 and bucket_seconds(3600) == 60
    assert bucket_seconds(86400) == 1800
    for d in (1, 90, 1000, 7777, 200_000, 10_000_000):
        b = bucket_seconds(d)
        assert d / b <= 60 and (d / b > 60 / 3 or b == 1 or d < 60)
