"""The bundle's one executable: `station …` as installed by pip (`station gui` opens the window)."""
from station.cli import main

main()
