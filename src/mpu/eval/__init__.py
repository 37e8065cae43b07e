"""mpu.eval — see DESIGN.md for this layer's job."""
