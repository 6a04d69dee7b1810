from cli.client.participant import Participant as SignalingClient  # noqa: F401 (tests/test_security_*.py)
