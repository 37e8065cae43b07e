"""mpu.io — see DESIGN.md for this layer's job."""
