"""Data layer: dataset readers, image I/O, joint transforms, the preprocessing cache and the DataModule."""
