"""One recurrent step of the selective scan (mamba_ssm's ``selective_state_update``): a torch reference and a
Triton kernel that updates the state in place."""
