"""dtmon: live data-quality monitor for the MiniDT drift-tube telescope.

Shared pieces of all stages: settings, DAQ row decoding and chamber map, raw-topic wire
format, results message schema, and the embedded services.
"""

__version__ = "0.1.0"
