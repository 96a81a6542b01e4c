"""Emulated USB DFU devices (STM32 ROM DfuSe, Spark Core, Photon) behind a pyusb backend, in process or over TCP."""
