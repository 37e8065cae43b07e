"""mpu.pipeline — see docs/architecture.md for this layer's job."""
