"""Live captions: the SFU sink that turns speech into caption events (sink.py), their routing
and the host's controls over signaling (controls.py), and the stored transcripts (transcripts.py)."""
