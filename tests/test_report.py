"""The report's reading guide: what a results table's numbers mean (data size, chance level, full-scale figure)."""

from tf_fastbat import report


def test_reading_guide_states_sizes_and_chance_level():
    text = report.reading_guide("npz:/data/mine.npz", 1800, 200, 500, 10)
    assert "1,800 images" in text and "200 more held out" in text and "tested on 500" in text
    assert "chance level 10%" in text
    assert "small-data" not in text  # no full-scale figure is known for an arbitrary dataset


def test_reading_guide_counts_the_held_out_split_not_only_what_early_stopping_attacked():
    text = report.reading_guide("npz:/data/mine.npz", 4577, 508, 1017, 10, num_early_stopping=16)
    assert text.startswith("Trained on 4,577 images (508 more held out, of which early stopping attacked the first "
                           "16), tested on 1,017;")
    assert "(508 more held out for early stopping)" in report.reading_guide("npz:x", 4577, 508, 1017, 10, 508)


def test_the_training_splits_count_every_held_out_example():
    from conftest import SHARED_SLICE
    from tf_fastbat import data

    source = data.load(f"npz:{SHARED_SLICE}")
    splits = data.splits(source, batch_size=32, val_ratio=0.1, seed=0, validation_examples=16)
    assert (splits.num_train, splits.num_held_out) == (4577, 508)  # 5,085 images, 10% held out (508.5 rounds to even)
    assert len(splits.validation_arrays[0]) == 16  # what early stopping attacks: --es_num_examples


def test_reading_guide_of_the_bundled_slice_names_the_full_scale_figure():
    text = report.reading_guide("bundled:cifar10_slice", 1800, 200, 500, 10)
    assert "small-data figures" in text and "table1_fast_bat_eps8.cfg" in text and "46.1%" in text


def test_chance_level_follows_the_number_of_classes():
    assert "chance level 1% (100 classes)" in report.reading_guide("cifar100", 45000, 5000, 10000, 100)
