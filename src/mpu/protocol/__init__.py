"""mpu.protocol — see DESIGN.md for this layer's job."""
