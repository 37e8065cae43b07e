"""mpu.server — see DESIGN.md for this layer's job."""
