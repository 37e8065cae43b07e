"""MPU between two parties over a network, on Flower (docs/federated.md).

`server_app.app` is the model owner's `ServerApp` (the round loop of `mpu.server.rounds` with
Flower carrying the copies and deltas), `client_app.app` the data owner's `ClientApp`,
`transport` turns folders into Flower records and back byte for byte, `ledger` orders many
clients' requests, `certs` makes a CA, a server certificate and client keys, and `deploy`
starts the SuperLink / SuperNode processes behind `mpu serve` and `mpu join`.
"""
