"""mpu.client — see DESIGN.md for this layer's job."""
