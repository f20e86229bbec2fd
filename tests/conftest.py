import os
import warnings

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def make_benchmark(out, num_labeled=16, num_unlabeled=32, num_validation=8, num_test=8, image_size=64):
    """Generate a tiny synthetic benchmark (64 px, one process, no progress bars) into `out`; returns `out`."""
    from xpl_hf.data.synthetic import generate_benchmark

    generate_benchmark(str(out), num_labeled=num_labeled, num_unlabeled=num_unlabeled, num_validation=num_validation,
                       num_test=num_test, image_size=image_size, seed=0, progress=False, num_workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    """A tiny generated benchmark (all four splits), shared by the trainer tests."""
    return str(make_benchmark(tmp_path_factory.mktemp("tiny-benchmark")))


# The slow tier: tests measured at more than 2 s each (setup + call + teardown) in a full run with `--durations=0` on
# the shared 2-core machine under load; a node id without its [parameters] marks every parameter set, a file name the
# whole file. `pytest -m "not slow"` runs the rest (the quick tier).
SLOW_TESTS = {
    "tests/test_accelerate_config.py::test_default_config_launches_without_warning",
    "tests/test_accelerate_config.py::test_without_a_config_accelerate_warns",
    "tests/test_audio_resampling.py::test_rate_error_is_within_the_documented_bound[16000]",
    "tests/test_bf16.py::test_losses_under_bf16_autocast_are_finite_and_close_to_fp32",
    "tests/test_bf16.py::test_recipe_trains_with_mixed_precision_bf16",
    "tests/test_checkpointing.py::test_a_kill_inside_the_best_model_swap_is_recovered",
    "tests/test_data_loading.py::test_load_labeled",
    "tests/test_data_prepare.py::test_folder_round_trip_with_bad_inputs",
    "tests/test_data_prepare.py::test_push_to_hub_offline",
    "tests/test_data_prepare.py::test_vggss_converter",
    "tests/test_data_synthetic.py::test_deterministic_and_worker_independent",
    "tests/test_data_synthetic.py::test_generate_splits_and_schema",
    "tests/test_data_synthetic.py::test_objects_list_every_object_and_mark_the_sounding_one",
    "tests/test_data_synthetic.py::test_reuse_and_regenerate",
    "tests/test_data_transforms.py::test_dataloader_over_loaded_splits",
    "tests/test_dataset_card.py::test_load_dataset_reads_every_split",
    "tests/test_evaluate_cli.py::test_cli_max_samples_and_bad_arguments",
    "tests/test_evaluate_cli.py::test_cli_reports_branches_labels_subsets_and_overlays",
    "tests/test_evaluate_cli.py::test_module_entry_point_help",
    "tests/test_evaluation.py::test_whole_image_predictor_on_vggss",
    "tests/test_fast_preprocessing.py::test_color_randaugment_is_torchvision_pixel_for_pixel[4-30]",
    "tests/test_foundation.py::test_model_outputs",
    "tests/test_foundation.py::test_original_backbone_layouts",
    "tests/test_foundation.py::test_save_and_remote_code_load_in_fresh_process",
    "tests/test_hub.py::test_staged_space_imports_bundled_package",
    "tests/test_light_install.py::test_model_processor_and_pipeline_run_without_the_extras",
    "tests/test_listening.py::test_listening_scores_equal_forwards_with_the_replaced_sound",
    "tests/test_no_sync.py::test_non_finite_loss_between_reporting_steps_stops_at_the_next_one",
    "tests/test_no_sync.py::test_non_finite_loss_on_a_reporting_step_saves_the_state_before_it",
    "tests/test_no_sync.py::test_xpl_step_reads_no_device_data_on_the_host",
    "tests/test_pipeline.py::test_in_process_with_arrays",
    "tests/test_pipeline.py::test_pipeline_offline_from_another_directory",
    "tests/test_pipeline.py::test_saving_during_training_leaves_the_model_alone",
    "tests/test_pipeline.py::test_video_input",
    "tests/test_post_processing.py::test_real_model_outputs",
    "tests/test_pretrained_offline.py::test_offline_mode_uses_a_cached_file",
    "tests/test_reproduce_end_to_end.py::test_report_from_fake_runs",
    "tests/test_space.py::test_client_bad_inputs_get_clear_messages",
    "tests/test_space.py::test_client_gets_three_overlays_rho_and_time",
    "tests/test_space.py::test_client_video",
    "tests/test_space.py::test_hours_of_audio_refused_before_decoding[long.mp3-mp3-libmp3lame]",
    "tests/test_space.py::test_hours_of_audio_refused_before_decoding[long.ogg-ogg-libopus]",
    "tests/test_space.py::test_localize_and_overlay",
    "tests/test_space.py::test_model_lookup",
    "tests/test_space.py::test_no_model_shows_notice_and_runs_nothing",
    "tests/test_space.py::test_uploads_are_deleted",
    "tests/test_space.py::test_video_frame_search_is_capped",
    "tests/test_space_browser.py::test_upload_click_and_see_heat_maps",
    "tests/test_streaming_abort.py::test_eager_then_streamed_read_exits_cleanly",
    "tests/test_training.py::test_a_missing_split_is_one_clear_line",
    "tests/test_training.py::test_an_unlabeled_split_with_boxes_is_never_trained_on",
    "tests/test_training.py::test_every_method_and_ablation_trains",
    "tests/test_training.py::test_full_supervision_ceiling_and_frozen_trunks",
    "tests/test_training.py::test_nan_loss_stops_with_a_checkpoint",
    "tests/test_training.py::test_push_to_hub_uploads_the_final_folder",
    "tests/test_training.py::test_resume_with_other_settings_is_refused_and_no_secret_is_logged",
    "tests/test_training.py::test_sigkill_and_resume_is_exact",
    "tests/test_training.py::test_small_runs_stay_small",
    "tests/test_training.py::test_two_cpu_processes_with_accelerate_launch",
    "tests/test_training_args.py::test_parsing_imports_no_torch",
    "tests/test_video_ingest.py::test_a_killed_conversion_resumes_and_a_rerun_never_duplicates",
    "tests/test_video_ingest.py::test_flickr_from_videos",
    "tests/test_video_ingest.py::test_parts_written_into_one_shared_folder_and_other_splits_are_kept",
}


def pytest_collection_modifyitems(config, items):
    matched = set()
    for item in items:
        for key in (item.nodeid, item.nodeid.split("[")[0], item.nodeid.split("::")[0]):
            if key in SLOW_TESTS:
                item.add_marker(pytest.mark.slow)
                matched.add(key)
    collected_files = {item.nodeid.split("::")[0] for item in items}
    stale = sorted(k for k in SLOW_TESTS - matched if k.split("::")[0] in collected_files)
    if stale:
        warnings.warn(pytest.PytestWarning(f"tests/conftest.py SLOW_TESTS names tests that do not exist: {stale}"),
                      stacklevel=2)


def pytest_configure(config):
    import datasets

    # Streamed passes that shuffle end with a 5 s sleep (an Arrow thread-shutdown workaround); not needed in tests.
    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
