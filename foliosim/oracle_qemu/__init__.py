"""Real-kernel oracle for DAX: QEMU guests with an emulated NVDIMM (issue 7)."""
