"""mpu.methods — see DESIGN.md for this layer's job."""
