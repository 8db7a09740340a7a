"""EPIC-KITCHENS-100: annotation CSVs, class vocabularies, dataset layout, hand-object detections."""
