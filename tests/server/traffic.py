"""Client threads for the tests that send traffic while something goes wrong (test_failures, test_isolation)."""

import threading
import time
from collections import Counter

from cascade_client import CascadeClient


class Traffic:
    """``workers`` client threads sending the same request in a loop until stopped; every outcome is recorded."""

    def __init__(self, url: str, task: str, texts, embeddings=None, workers: int = 3, **options):
        self.url, self.task, self.texts, self.embeddings, self.options = url, task, texts, embeddings, options
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.tiers: Counter = Counter()
        self.answers: list = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        with CascadeClient(self.url) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    answers = client.classify(self.task, self.texts, self.embeddings, **self.options)
                except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                    with self.lock:
                        self.errors.append(str(exc))
                    continue
                with self.lock:
                    self.latencies.append(time.monotonic() - start)
                    self.answers.extend(answers)
                    self.tiers.update(p.tier_name for p in answers)

    @property
    def requests(self) -> int:
        return len(self.latencies) + len(self.errors)

    @property
    def slowest_s(self) -> float:
        return max(self.latencies, default=0.0)

    def __str__(self) -> str:
        errors = len(self.errors)
        return f"{self.requests} requests, tiers {dict(self.tiers)}, {errors} errors, slowest {self.slowest_s:.2f} s"

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=180)
        assert not any(t.is_alive() for t in self.threads), "a request hung"
