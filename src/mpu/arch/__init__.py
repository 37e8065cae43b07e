"""mpu.arch — see DESIGN.md for this layer's job."""
