"""mpu.pipeline — see DESIGN.md for this layer's job."""
