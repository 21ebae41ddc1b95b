"""PyInstaller hook files (hook-*.py); see fatdispatch._pyinstaller."""
