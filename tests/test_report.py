"""The report's reading guide: what a results table's numbers mean (data size, chance level, full-scale figure)."""

from tf_fastbat import report


def test_reading_guide_states_sizes_and_chance_level():
    text = report.reading_guide("npz:/data/mine.npz", 1800, 200, 500, 10)
    assert "1,800 images" in text and "200 more held out" in text and "tested on 500" in text
    assert "chance level 10%" in text
    assert "small-data" not in text  # no full-scale figure is known for an arbitrary dataset


def test_reading_guide_of_the_bundled_slice_names_the_full_scale_figure():
    text = report.reading_guide("bundled:cifar10_slice", 1800, 200, 500, 10)
    assert "small-data figures" in text and "table1_fast_bat_eps8.cfg" in text and "46.1%" in text


def test_chance_level_follows_the_number_of_classes():
    assert "chance level 1% (100 classes)" in report.reading_guide("cifar100", 45000, 5000, 10000, 100)
