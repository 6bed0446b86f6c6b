"""Traffic generation and reporting for `make scale-test` and the integration tests."""
