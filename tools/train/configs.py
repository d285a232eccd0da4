"""Architecture and schedule of the shipped emoji model, shared by the
training, export and evaluation scripts."""

IMAGE_SIZE = 64
LATENT_SIZE = 16

VAE = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
           latent_channels=4, norm_num_groups=16, sample_size=IMAGE_SIZE)

UNET = dict(sample_size=LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(48, 80, 96),
            layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
            attention_head_dim=4, norm_num_groups=16)

TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=64, hidden_act="quick_gelu", bos_token_id=49406,
            eos_token_id=49407, pad_token_id=49407)

# 1024 training steps so that every power-of-two step count divides it and
# DDIM's `t - T // N` lands exactly on the next trailing timestep.
SCHEDULER = dict(num_train_timesteps=1024, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                 timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, steps_offset=0)

# The teacher is sampled with classifier-free guidance at this scale; the
# student is distilled from the guided teacher, so it runs at scale 1.
TEACHER_GUIDANCE = 3.0

# The student runs this many DDIM steps (where progressive distillation ends;
# the guidance-conditioned student is trained on this grid too).
STUDENT_STEPS = 4

# The guidance-conditioned student (distill_guidance.py): the UNet above plus
# diffusers' guidance embedding (`time_cond_proj_dim`, as in LCM), trained for
# guidance scales w in [1, W_MAX]; the pipelines feed it embed(w - 1).
UNET_W = dict(UNET, time_cond_proj_dim=256)
W_MAX = 4.0
