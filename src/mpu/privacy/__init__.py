"""mpu.privacy — see DESIGN.md for this layer's job."""
