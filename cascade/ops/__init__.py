"""Operations: load-test scenarios with their latency budgets, and the bounded soak test."""
