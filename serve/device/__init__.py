"""The device side of twostep: what runs on a phone, not in the cluster.

`client` (`DeviceClient`: plans from its own uplink estimate and the edge's plan table, runs heads
locally, sends frames over one session or HTTP) and `stream_client` (the session's wire on the
device). Importable without torch and without Ray (ONNX Runtime runs the heads)."""
