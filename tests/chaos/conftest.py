from tests.integration.conftest import local_stack  # noqa: F401  (the same real local stack)
