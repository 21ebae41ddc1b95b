# PyInstaller hook for fatdispatch itself (static; the fat packages' hooks are generated, see __init__.py).
from fatdispatch._pyinstaller import hook_fatdispatch

_spec = hook_fatdispatch()
datas = _spec["datas"]
hiddenimports = _spec["hiddenimports"]
