"""Models on disk: the classifier and its folder (model), the typed card (card), pretrained
weights (weights), models made elsewhere (importing) and the claim a job makes on the folder
it writes (runfolder). Imports from contracts, output, profile and data.
"""
