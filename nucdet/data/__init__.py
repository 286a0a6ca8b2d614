"""Datasets: converters to COCO, folds, registration, mappers and augmentations."""
