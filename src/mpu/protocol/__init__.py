"""mpu.protocol — see docs/architecture.md for this layer's job."""
