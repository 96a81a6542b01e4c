"""Optional pass / fail sounds. PySide6-Essentials has no QtMultimedia, so the fallback is the system bell:
one beep for a pass, three for a fail. With the full PySide6 (Addons), resources/sounds/*.wav play instead."""
from __future__ import annotations

from PySide6.QtCore import QObject, QTimer, QUrl
from PySide6.QtWidgets import QApplication

from ui.theme import RESOURCES

try:  # not in PySide6-Essentials
    from PySide6.QtMultimedia import QSoundEffect  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the wheel installed
    QSoundEffect = None


class Sounds(QObject):
    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.enabled = False  # pass / fail
        self.prompts = True  # a board needs a hand: on unless a supervisor turned it off
        self.played: list[str] = []  # what was played, newest last (tests, diagnostics)
        self._effects = {}
        if QSoundEffect is not None:
            for name in ("pass", "fail"):
                effect = QSoundEffect(self)
                effect.setSource(QUrl.fromLocalFile(str(RESOURCES / "sounds" / f"{name}.wav")))
                self._effects[name] = effect

    @property
    def backend(self) -> str:
        return "QSoundEffect" if self._effects else "system bell (QApplication.beep)"

    def prompt(self) -> None:
        """Two beeps: a board waits for a person, whichever tab (or window) is in front."""
        if not self.prompts:
            return
        self.played.append("prompt")
        self.played = self.played[-50:]
        QApplication.beep()
        QTimer.singleShot(250, QApplication.beep)

    def play(self, ok: bool) -> None:
        if not self.enabled:
            return
        name = "pass" if ok else "fail"
        self.played.append(name)
        self.played = self.played[-50:]
        effect = self._effects.get(name)
        if effect is not None:
            effect.play()
            return
        QApplication.beep()
        if not ok:
            QTimer.singleShot(180, QApplication.beep)
            QTimer.singleShot(360, QApplication.beep)
