"""Recording: the SFU writes each published track as received (no transcoding) to its own
Matroska/WebM file; on stop the files go to the object store, and a composite export is made on
demand. See docs/architecture.md ("Recording") for the flow."""
