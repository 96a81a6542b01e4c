"""Emulated Spark Cores and Photons: DFU bootloader (usbsim://) and run-time USB serial (particlesim://) at one
USB location, listening-mode console, magic baud rates, buttons; what they run is what was flashed into them."""
